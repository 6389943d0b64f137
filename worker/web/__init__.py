"""`offboard serve`'s web application: `app` wires it (`build_app`), `api` answers the
webhooks and the JSON API, `ui` renders the status page, `state` holds what they share
and `problems` turns refusals into RFC 9457 problem documents.

Imports go one way: app -> api, ui -> state, problems; nothing imports `app` back.
"""
