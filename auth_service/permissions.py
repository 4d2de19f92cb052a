"""Permissions are `area:verb` strings; these are the ones the service itself checks."""

USERS_READ = "users:read"
USERS_WRITE = "users:write"
USERS_DELETE = "users:delete"
ROLES_READ = "roles:read"
ROLES_WRITE = "roles:write"
ROLES_ASSIGN = "roles:assign"
AUDIT_READ = "audit:read"
CLIENTS_READ = "clients:read"
CLIENTS_WRITE = "clients:write"

BUILTIN_PERMISSIONS = (
    USERS_READ,
    USERS_WRITE,
    USERS_DELETE,
    ROLES_READ,
    ROLES_WRITE,
    ROLES_ASSIGN,
    AUDIT_READ,
    CLIENTS_READ,
    CLIENTS_WRITE,
)
