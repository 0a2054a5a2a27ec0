"""SCIM 2.0 apps (RFC 7643/7644): the line-of-business SaaS an identity platform provisions."""
