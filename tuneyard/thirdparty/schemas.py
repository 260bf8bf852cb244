"""API shapes for third-party models."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from tuneyard.outbound import API_KEY_PATTERN

# Known providers and the base URL each gets when none is given; openai-compatible has none.
PROVIDER_BASE_URLS: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "dashscope": "https://dashscope.aliyuncs.com/compatible-mode/v1",
    "siliconflow": "https://api.siliconflow.cn/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "openai-compatible": None,
}
PROVIDERS = tuple(PROVIDER_BASE_URLS)
MODEL_TYPES = ("chat", "embedding")
NAME_PATTERN = r"^[A-Za-z0-9._:/-]{1,200}$"
# What the service checks, as documentation for clients (and the fuzzer).
NAME: JsonDict = {"pattern": NAME_PATTERN}
PROVIDER: JsonDict = {"enum": list(PROVIDERS)}
MODEL_TYPE: JsonDict = {"enum": list(MODEL_TYPES)}
MODEL_NAME: JsonDict = {"pattern": r"\S", "maxLength": 500}
BASE_URL: JsonDict = {"pattern": r"^\s*(https?://[^\s/]+\S*)?\s*$"}


class ThirdPartyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Unique in the project; letters, digits and . _ : / - (at most 200).",
        json_schema_extra=NAME,
    )
    provider: str = Field(
        description="One of: " + ", ".join(PROVIDERS) + ".", json_schema_extra=PROVIDER
    )
    model_type: str = Field("chat", description="chat or embedding.", json_schema_extra=MODEL_TYPE)
    model_name: str = Field(
        description="The model id the endpoint expects, e.g. gpt-4o-mini.",
        json_schema_extra=MODEL_NAME,
    )
    base_url: str | None = Field(
        None,
        description="The OpenAI-compatible base URL, e.g. https://api.deepseek.com/v1. Known "
        "providers have a default; openai-compatible needs one.",
        json_schema_extra=BASE_URL,
    )
    api_key: str | None = Field(
        None,
        description="Sent as a bearer token; stored encrypted, never returned.",
        json_schema_extra={"pattern": API_KEY_PATTERN},
    )
    description: str = ""
    private: bool = Field(False, description="Only its creator sees and uses it.")


class ThirdPartyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, json_schema_extra=NAME)
    provider: str | None = Field(
        None,
        description="A new provider; without base_url, it brings its default base URL.",
        json_schema_extra=PROVIDER,
    )
    model_type: str | None = Field(None, json_schema_extra=MODEL_TYPE)
    model_name: str | None = Field(None, json_schema_extra=MODEL_NAME)
    base_url: str | None = Field(None, json_schema_extra=BASE_URL)
    api_key: str | None = Field(
        None,
        description="A new key; an empty string removes it.",
        json_schema_extra={"pattern": API_KEY_PATTERN},
    )
    description: str | None = None
    private: bool | None = Field(None, description="Only its creator can make it private.")


class ThirdPartyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    provider: str
    model_type: str
    model_name: str
    base_url: str
    has_api_key: bool = Field(description="Whether a key is stored; the key is never returned.")
    description: str
    private: bool
    created_by: str | None = Field(description="The id of the user who added it.")
    live_model_id: str | None = Field(description="The live model it was registered from.")
    created_at: datetime
    updated_at: datetime


class ThirdPartyTest(BaseModel):
    ok: bool
    detail: str = Field(description="What answered, or why the test failed.")
    latency_ms: int | None = Field(
        description="How long the model took to answer the test request; null without one."
    )
