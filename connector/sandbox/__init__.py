"""Throwaway stand-ins for a client's systems, shared by the test fixtures and `make demo`.

One implementation serves both, so the demo a technician watches is the setup the
tests prove.
"""
