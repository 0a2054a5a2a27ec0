"""ConnectWise Manage (PSA): the `bill` phase, the leaver's contact, ticket notes and tickets."""
