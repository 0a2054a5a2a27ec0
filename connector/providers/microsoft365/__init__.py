"""Microsoft 365: Entra ID through Graph and Exchange Online through its admin endpoint, one app registration."""
