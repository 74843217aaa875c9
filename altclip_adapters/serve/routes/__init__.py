"""The server's routes, one router per concern; each reads what it needs from ``request.app.state``
(see :func:`..app.create_app`)."""
