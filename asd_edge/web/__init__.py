"""The web dashboard, ``asd-edge web``: a separate process from the daemon, an MQTT client
of the same broker and an HTTP server (Starlette on uvicorn, the ``[web]`` extra).

- ``fleet``: what the broker's retained and live topics say about every device;
- ``bridge``: the MQTT client: follows the topics, sends commands, fetches clips;
- ``hub``: updates to the open pages (server-sent events) and the ``cmd/live`` leases;
- ``server``: the pages, the JSON API, clips, actions and ``/metrics``;
- ``access``, ``auth``: who may view and act (password, token, sessions, CSRF);
- ``actions``: rollback, learn and false-alarm through the daemons' commands;
- ``metrics``: the Prometheus text of the fleet's health;
- ``clipfiles``: this device's clips, read from its state directory;
- ``i18n``: the pages' words in English and Japanese;
- ``app``: the parts put together; ``cli``: ``asd-edge web``.

Only ``cli`` is imported by the ``asd-edge`` command line; the rest loads when the
dashboard starts, so the daemon never imports Starlette.
"""
