"""Error playbooks: the shipped ones are the ``*.md`` files of this package; the code that
loads, overrides and matches them is :mod:`sidecar.playbooks.library`."""
