"""The import path the contract (§7) gives the task graph's embedded API: the code lives in
:mod:`sidecar.tasks`."""
