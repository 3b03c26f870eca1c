"""
Cache stores: the interface (L{base}) and its backends (L{memory},
L{disk}). No HTTP rules live here; those are in L{cachingproxy.policy}.
"""
