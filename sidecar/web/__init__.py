"""``sidecar web``: the console people watch, in a browser.

A process of its own beside the daemon (the daemon opens no TCP port): Starlette and uvicorn
serve a page and its assets from this package, and every fact on it comes from the daemon's
socket through the Python client. :mod:`.guard` decides who may ask (token, Host, Origin),
:mod:`.link` holds the daemon connection, :mod:`.stream` turns a subscription into Server-Sent
Events, :mod:`.app` wires the routes and :mod:`.main` binds and serves.
"""
