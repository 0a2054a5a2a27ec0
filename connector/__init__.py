"""offboard-connector: offboard leavers from every system an MSP manages, revoke first."""
__version__ = "0.1.0"
