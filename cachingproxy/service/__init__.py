"""
Running the proxy: settings from every source, the twistd service,
worker processes on one listening socket, systemd, TLS listeners, reload.
"""
