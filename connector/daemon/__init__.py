"""`offboard serve`: the long-running mode. It only drives `reconcile(...)`: from a schedule, at the
instants work becomes due, and from webhooks; everything it must remember lives in the state store."""
