"""Types used by router tests; importable by workers (the test pool's PYTHONPATH has tests/)."""

import pydantic


class Planet(pydantic.BaseModel):
    name: str
    moons: int
