"""auth_service: a small, self-hosted authentication and user-management service."""

__version__ = "0.1.0"
