"""Authentication and authorization of the master (issue 10), independent of the transport.

* :mod:`~master_server.auth.core`: tokens -> :class:`~master_server.auth.principal.Principal`
  (user sessions with expiry, trial tokens scoped to one run), login/logout, the first admin.
* :mod:`~master_server.auth.policy`: one access rule per RPC, owners of created resources,
  ``username`` on answers, environment variables hidden from non-owners.
* :mod:`~master_server.auth.users`: the user-management service.
* :mod:`~master_server.auth.interceptor`: the thin gRPC server interceptor.
"""

from master_server.auth.core import PUBLIC_METHODS, Authenticator
from master_server.auth.principal import Principal, current, require

__all__ = ["PUBLIC_METHODS", "Authenticator", "Principal", "current", "require"]
