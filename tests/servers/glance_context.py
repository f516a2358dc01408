"""A paste filter for the keyless test Glance: every request acts as an admin of one project.

Runs inside Glance's own venv (tests/servers/glance.py copies it into the server's config
directory and puts that on uWSGI's pythonpath), so it imports only Glance's modules.

Glance's own keyless filter (``unauthenticated-context``) makes a context with no project,
and a copy-image import then fails with HTTP 500: the task it records needs an owner
(tasks.owner is NOT NULL). This one sets a user and a project. A request may name others
with ``X-User-Id`` / ``X-Project-Id`` (to make images of another owner).
"""

import glance.context
from glance.api import policy
from glance.api.middleware import context

USER_ID = "gsfs-test-user"
PROJECT_ID = "gsfs-test-project"
ROLES = ["admin", "member", "reader"]


class AdminContextMiddleware(context.BaseContextMiddleware):
    def __init__(self, app):
        self.policy_enforcer = policy.Enforcer()
        super().__init__(app)

    def process_request(self, req):
        req.context = glance.context.RequestContext(
            user_id=req.headers.get("X-User-Id", USER_ID),
            project_id=req.headers.get("X-Project-Id", PROJECT_ID),
            roles=list(ROLES),
            is_admin=True,
            policy_enforcer=self.policy_enforcer,
        )
