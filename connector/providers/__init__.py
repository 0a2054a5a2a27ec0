"""One module (or package) per external system. Providers never import `connector.reconcile`."""
