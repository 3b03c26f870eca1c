"""
What operators see: the admin pages and status page, metrics, the access
log.
"""
