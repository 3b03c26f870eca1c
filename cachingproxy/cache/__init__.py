"""
The shared HTTP cache: RFC 9111 as pure functions (L{policy}), the layer
that applies it to each exchange (L{layer}), the store interface
(L{store}) and its backends (L{memory}, L{disk}).
"""
