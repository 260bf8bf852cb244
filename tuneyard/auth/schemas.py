"""API shapes for login, users and tokens."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class LoginIn(BaseModel):
    project_code: str = Field(min_length=1, max_length=32)
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(BaseModel):
    token: str
    project_code: str
    username: str
    role: str


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    password: str = Field(min_length=8, max_length=1024)
    role: str = Field("member", pattern="^(admin|member|viewer)$")


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class PasswordReset(BaseModel):
    new_password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    role: str
    operator: bool = Field(description="The server's operator: may upload code it runs.")
    created_at: datetime


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret; shown once, store it now.")


class MeOut(BaseModel):
    user_id: str
    username: str
    role: str
    operator: bool
    project_code: str
