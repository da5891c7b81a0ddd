"""The in-process API fixtures of tests/api (app, api, anon, as_token, db, make_box) for the attack tests."""

from tests.api.conftest import ADMIN_TOKEN, BASE_URL, anon, api, app, as_token, db, make_box  # noqa: F401
from tests.api.test_pipelines import control_worker  # noqa: F401
