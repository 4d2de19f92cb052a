"""The two reference apps `make bench` serves beside the service (issue 13).

Each is the least a FastAPI app can do for its kind of request, served by the same uvicorn
command line as the service, so the ratios against them say how much the service adds:

- R1 (`constant_app`): one sync endpoint answering a constant JSON: the framework's ceiling.
- R2 (`get_by_pk_app`): one sync endpoint doing one `Session.get(User, pk)` on the service's
  database, through SQLModel's default engine and pool (`create_engine(url)`, nothing
  tuned), answering a couple of fields: the framework plus one database round trip.

Both answer `GET /`. R2 reads `BENCH_REFERENCE_DATABASE_URL` and `BENCH_REFERENCE_USER_ID`
(an existing user's id) from the environment at start-up.

    uvicorn --factory tests.bench_references:constant_app
    uvicorn --factory tests.bench_references:get_by_pk_app
"""

import os
import uuid

from fastapi import FastAPI, HTTPException
from sqlmodel import Session, create_engine

from auth_service.models import User


def constant_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    def constant() -> dict[str, str]:
        return {"status": "ok"}

    return app


def get_by_pk_app() -> FastAPI:
    engine = create_engine(os.environ["BENCH_REFERENCE_DATABASE_URL"])
    user_id = uuid.UUID(os.environ["BENCH_REFERENCE_USER_ID"])
    app = FastAPI()

    @app.get("/")
    def user_by_primary_key() -> dict[str, str | bool]:
        with Session(engine) as session:
            user = session.get(User, user_id)
            if user is None:
                raise HTTPException(404)
            return {"id": str(user.id), "email": user.email, "is_active": user.is_active}

    return app
