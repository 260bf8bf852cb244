"""Console pages for DeepImage: image models (registered by path, with their card and image
LoRAs, uploaded or trained there on a zip of captioned images), a prompt form whose generation
job is followed live, and the grid of results with download, delete, reuse recipe, again and
vary."""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi.responses import FileResponse, RedirectResponse, Response
from nicegui import app, ui

from tuneyard.console.jobs import JobWatch
from tuneyard.console.session import (
    SignedOut,
    act,
    browser_token,
    call,
    current_principal,
    read,
    run_signed_in,
)
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    actions_slot,
    cannot,
    column,
    confirm_delete,
    delete_button,
    error_label,
    facts,
    heading,
    model_card,
    size_text,
    when,
)
from tuneyard.errors import AppError, NotFound
from tuneyard.images import service
from tuneyard.images.grounding import DEFAULT_GROUNDING_TOKENS, MAX_GROUNDING_TOKENS
from tuneyard.images.schemas import (
    ASPECT_RATIOS,
    MAX_COUNT,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_TRAIN_STEPS,
    AdapterUse,
    GenerateIn,
    TrainIn,
)
from tuneyard.knowledge import service as knowledge
from tuneyard.models import GeneratedImage, ImageModel

SECTION = "/deepimage"
IMAGES_PER_PAGE = 12
EXPLICIT_SIZE = "explicit"
SIZE_CHOICES = {**{ratio: ratio for ratio in ASPECT_RATIOS}, EXPLICIT_SIZE: "Explicit size"}
MODEL_COLUMNS = [
    column("name", "Name"),
    column("pipeline_class", "Pipeline", wide_only=True),
    column("native_size", "Native size"),
    column("parameters", "Parameters", wide_only="gt-sm"),
    column("size", "On disk", wide_only="gt-sm"),
    column("adapters", "Adapters", wide_only=True),
]
ADAPTER_COLUMNS = [
    column("name", "Name"),
    column("origin", "Origin"),
    column("size", "Size"),
    column("digest", "Digest", wide_only=True),
    column("created", "Added", wide_only="gt-sm"),
]


# -- the PNG for the browser -----------------------------------------------------------------


@app.get("/download/images/{image_id}", include_in_schema=False)
async def image_png(image_id: str, attachment: bool = False) -> Response:
    """An image's PNG (recipe inside), signed in by the console's session."""
    try:
        path = run_signed_in(
            lambda session, principal: service.image_path(
                service.get_image(session, principal, image_id)
            ),
            browser_token(),
        )
        if not path.is_file():
            raise NotFound(f"The file of image {image_id} is gone; delete the image.")
    except SignedOut:
        from tuneyard.console.app import MOUNT_PATH

        return RedirectResponse(f"{MOUNT_PATH}/login")
    except AppError as exc:
        return Response(exc.message, status_code=exc.status, media_type="text/plain")
    return FileResponse(
        path,
        media_type="image/png",
        filename=f"{image_id}.png" if attachment else None,
        content_disposition_type="attachment" if attachment else "inline",
    )


# -- reads -----------------------------------------------------------------------------------


def _model_row(session, principal, model: ImageModel) -> dict[str, Any]:
    card = model.card
    return {
        "id": model.id,
        "name": model.name,
        "pipeline_class": model.pipeline_class,
        "native_size": f"{card.get('native_size')} px",
        "parameters": card.get("parameters") or "unknown",
        "size": card.get("size") or size_text(card.get("size_bytes")),
        "adapters": len(service.list_adapters(session, principal, model.id)),
    }


def _model_rows(session, principal, limit: int, offset: int):
    models, total = service.list_image_models(session, principal, limit, offset)
    return [_model_row(session, principal, model) for model in models], total


def _form_choices(session, principal) -> dict[str, Any]:
    """What the prompt form offers: every model with its adapters, and the knowledge bases."""
    models, _total = service.list_image_models(session, principal, 200, 0)
    bases, _total = knowledge.list_knowledge_bases(session, principal, 200, 0)
    return {
        "models": {
            model.id: {
                "name": model.name,
                "adapters": {
                    adapter.id: adapter.name
                    for adapter in service.list_adapters(session, principal, model.id)
                },
            }
            for model in models
        },
        "knowledge_bases": {kb.id: kb.name for kb in bases},
    }


def _image_view(image: GeneratedImage) -> dict[str, Any]:
    return {
        "id": image.id,
        "recipe": dict(image.recipe),
        "width": image.width,
        "height": image.height,
        "created": when(image.created_at),
    }


def _images_page(session, principal, page: int) -> tuple[list[dict[str, Any]], int]:
    images, total = service.list_images(
        session, principal, IMAGES_PER_PAGE, (page - 1) * IMAGES_PER_PAGE
    )
    return [_image_view(image) for image in images], total


def _start(session, principal, request: GenerateIn) -> str:
    job, _recipe, _seeds = service.start_generation(session, principal, request)
    return job.id


# -- the DeepImage page ----------------------------------------------------------------------


@console_page("/deepimage", "DeepImage", SECTION)
def deepimage_page():
    heading(
        "DeepImage",
        "Images from diffusion models: register a model, write a prompt, and every image keeps "
        "the recipe that makes it again.",
    )
    principal = current_principal()
    member = principal.allows("member")

    ui.label("Image models").classes("text-lg font-semibold")
    models = PagedTable(
        MODEL_COLUMNS,
        _model_rows,
        link=lambda row: f"{SECTION}/models/{row['id']}",
        empty="No image models yet."
        + (" Register one below." if member else " A member of the project can register one."),
        rows_per_page=10,
        status_column=None,
    )
    models.table.props('data-testid="image-model-table"')

    grid = ResultGrid(member)
    if member:
        _register_form(lambda: ui.navigate.reload())
        form = PromptForm(read(_form_choices), grid)
        grid.form = form
    else:
        cannot(f"Registering models and generating images: {principal.refusal('member')}")
    grid.show()


def _register_form(refresh: Any) -> None:
    with ui.card().classes("w-full").props('flat bordered data-testid="image-register-form"'):
        ui.label("Register an image model").classes("font-medium")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-3 gap-3 w-full"):
            name = ui.input("Name").props('outlined dense data-testid="image-model-name"')
            path = ui.input(
                "Path on the server", placeholder="/models/stable-diffusion-v1-5"
            ).props('outlined dense data-testid="image-model-path"')
            config = ui.input("Config folder (single file only, optional)").props(
                'outlined dense data-testid="image-model-config"'
            )
        ui.label(
            "A diffusers folder (with model_index.json) or one .safetensors checkpoint, "
            "registered where it is: Tuneyard reads its card and never moves it."
        ).classes("text-xs text-grey-7")
        problem = error_label("image-register-error")

        async def register() -> None:
            problem.text = ""
            added = await act(
                lambda session, principal: (
                    service.register_image_model(
                        session,
                        principal,
                        name.value or "",
                        path.value or "",
                        config_path=(config.value or "").strip() or None,
                    ).id
                ),
                done="Image model registered",
                error_label=problem,
            )
            if added is not None:
                refresh()

        ui.button("Register", icon="add", on_click=register).props(
            'no-caps data-testid="image-model-register"'
        )


class PromptForm:
    """The prompt form; `fill(recipe, image_id)` loads an image's recipe into it."""

    def __init__(self, choices: dict[str, Any], grid: ResultGrid):
        self.choices = choices
        self.grid = grid
        self.source: dict[str, str] = {}  # {"image": base64} or {"image_id": id}
        self.recipe_from: str | None = None
        # Whether the recipe started from has a source image the next generation keeps.
        self.recipe_has_source = False
        models = {key: value["name"] for key, value in choices["models"].items()}
        with ui.card().classes("w-full").props('flat bordered data-testid="prompt-form"'):
            ui.label("Generate").classes("text-lg font-semibold")
            if not models:
                ui.label("Register an image model above to generate.").classes("text-grey-7")
            self.model = ui.select(
                models,
                label="Model",
                value=next(iter(models), None),
                on_change=lambda: self.adapters_area.refresh(),
            ).props('outlined dense data-testid="gen-model"')
            self.prompt = ui.textarea("Prompt").props(
                'outlined dense autogrow data-testid="gen-prompt"'
            )
            self.prompt.classes("w-full")
            self.negative = ui.input("Negative prompt").props(
                'outlined dense data-testid="gen-negative"'
            )
            self.negative.classes("w-full")
            with ui.element("div").classes("grid grid-cols-2 md:grid-cols-4 gap-3 w-full"):
                self.size = ui.select(SIZE_CHOICES, label="Aspect ratio", value="1:1").props(
                    'outlined dense data-testid="gen-aspect"'
                )
                self.width = ui.number("Width", min=1, max=MAX_SIDE, precision=0).props(
                    'outlined dense data-testid="gen-width"'
                )
                self.height = ui.number("Height", min=1, max=MAX_SIDE, precision=0).props(
                    'outlined dense data-testid="gen-height"'
                )
                self.count = ui.number("Count", value=1, min=1, max=MAX_COUNT, precision=0)
                self.count.props('outlined dense data-testid="gen-count"')
                self.steps = ui.number("Steps (blank: model's)", min=1, max=MAX_STEPS, precision=0)
                self.steps.props('outlined dense data-testid="gen-steps"')
                self.guidance = ui.number("Guidance (blank: model's)", min=0, max=30, step=0.5)
                self.guidance.props('outlined dense data-testid="gen-guidance"')
                self.seed = ui.number("Seed (blank: random)", min=0, max=MAX_SEED, precision=0)
                self.seed.props('outlined dense data-testid="gen-seed"')
            for side in (self.width, self.height):
                side.bind_visibility_from(self.size, "value", value=EXPLICIT_SIZE)

            self.adapter_fields: dict[str, tuple[ui.checkbox, ui.number]] = {}
            self.adapters_area()

            with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
                self.bases = ui.select(
                    choices["knowledge_bases"],
                    label="Ground in knowledge bases (optional)",
                    multiple=True,
                    value=[],
                ).props('outlined dense use-chips data-testid="gen-kbs"')
                self.grounding_tokens = ui.number(
                    "Grounding tokens",
                    value=DEFAULT_GROUNDING_TOKENS,
                    min=1,
                    max=MAX_GROUNDING_TOKENS,
                    precision=0,
                ).props('outlined dense data-testid="gen-grounding-tokens"')

            with ui.expansion("Image to image", icon="image").classes("w-full"):
                ui.label(
                    "Start from an uploaded image, or press Use as source on a result below."
                ).classes("text-xs text-grey-7")
                upload = ui.upload(label="Source image", auto_upload=True, on_upload=self._upload)
                upload.props('accept=".png,.jpg,.jpeg,.webp" flat bordered')
                upload.props('data-testid="gen-source-upload"')
                self.source_label = ui.label("No source: text to image.").props(
                    'data-testid="gen-source"'
                )
                with ui.row().classes("items-center gap-3"):
                    self.strength = ui.number(
                        "Strength", value=service.DEFAULT_STRENGTH, min=0, max=1, step=0.05
                    ).props('outlined dense data-testid="gen-strength"')
                    ui.button("Clear source", on_click=self.clear_source).props("flat no-caps")

            self.starting = ui.label("").classes("text-sm text-grey-8")
            self.starting.props('data-testid="gen-recipe-from"')
            self.problem = error_label("gen-error")
            ui.button("Generate", icon="brush", on_click=self.generate).props(
                'no-caps data-testid="generate"'
            )
            self.jobs = ui.column().classes("w-full gap-2").props('data-testid="gen-jobs"')

    @ui.refreshable_method
    def adapters_area(self) -> None:
        self.adapter_fields = {}
        adapters = self.choices["models"].get(self.model.value, {}).get("adapters", {})
        if not adapters:
            return
        ui.label("Adapters (image LoRAs), with their weights").classes("text-sm")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-2 w-full"):
            for adapter_id, name in adapters.items():
                with ui.row().classes("items-center gap-2 no-wrap"):
                    use = ui.checkbox(name).props(f'data-testid="gen-adapter-{name}"')
                    weight = ui.number("Weight", value=1.0, min=-4, max=4, step=0.1)
                    weight.props(f'outlined dense data-testid="gen-adapter-weight-{name}"')
                self.adapter_fields[adapter_id] = (use, weight)

    async def _upload(self, event) -> None:
        data = await event.file.read()
        self.source = {"image": base64.b64encode(data).decode()}
        self.source_label.text = f"Source: {event.file.name} (uploaded)"

    def use_as_source(self, image_id: str) -> None:
        self.source = {"image_id": image_id}
        self.source_label.text = f"Source: image {image_id[:8]}"
        ui.notify("The image is the source of the next generation", type="info")

    def clear_source(self) -> None:
        self.source = {}
        self.recipe_from = None
        self.recipe_has_source = False
        self.starting.text = ""
        self.source_label.text = "No source: text to image."

    def fill(self, recipe: dict[str, Any], image_id: str) -> None:
        """The form as the image's recipe was; the next generation starts from that image (its
        source image and grounded prompt too) with what the form then says."""
        if recipe.get("model_id") in self.choices["models"]:
            self.model.value = recipe["model_id"]
        self.prompt.value = recipe.get("prompt", "")
        self.negative.value = recipe.get("negative_prompt", "")
        self.size.value = EXPLICIT_SIZE
        self.width.value = recipe.get("width")
        self.height.value = recipe.get("height")
        self.steps.value = recipe.get("steps")
        self.guidance.value = recipe.get("guidance")
        self.seed.value = recipe.get("seed")
        self.count.value = 1
        self.adapters_area.refresh()
        weights = {entry["id"]: entry["weight"] for entry in recipe.get("adapters") or []}
        for adapter_id, (use, weight) in self.adapter_fields.items():
            use.value = adapter_id in weights
            weight.value = weights.get(adapter_id, 1.0)
        grounding = recipe.get("grounding") or {}
        known = self.choices["knowledge_bases"]
        self.bases.value = [kb for kb in grounding.get("knowledge_base_ids", []) if kb in known]
        self.grounding_tokens.value = grounding.get("budget_tokens", DEFAULT_GROUNDING_TOKENS)
        self.source = {}
        if recipe.get("strength") is not None:
            self.strength.value = recipe["strength"]
        self.recipe_from = image_id
        self.recipe_has_source = recipe.get("mode") == "image-to-image"
        self.source_label.text = (
            f"Source: the source of image {image_id[:8]}"
            if self.recipe_has_source
            else "No source: text to image."
        )
        self.starting.text = f"Starting from the recipe of image {image_id[:8]}."
        self.prompt.run_method("focus")

    def request(self) -> GenerateIn:
        fields: dict[str, Any] = {
            "model": self.model.value,
            "prompt": self.prompt.value or "",
            "negative_prompt": self.negative.value or "",
            "count": int(self.count.value or 1),
            "adapters": [
                AdapterUse(adapter=adapter_id, weight=float(weight.value or 0))
                for adapter_id, (use, weight) in self.adapter_fields.items()
                if use.value
            ],
            "knowledge_base_ids": list(self.bases.value or []),
        }
        if self.size.value == EXPLICIT_SIZE:
            fields["width"] = _whole(self.width.value)
            fields["height"] = _whole(self.height.value)
        else:
            fields["aspect_ratio"] = self.size.value
        for name, field in (("steps", self.steps), ("seed", self.seed)):
            if field.value is not None:
                fields[name] = int(field.value)
        if self.guidance.value is not None:
            fields["guidance"] = float(self.guidance.value)
        if fields["knowledge_base_ids"] and self.grounding_tokens.value is not None:
            fields["grounding_tokens"] = int(self.grounding_tokens.value)
        if "image" in self.source:
            fields["source_image"] = self.source["image"]
        elif "image_id" in self.source:
            fields["source_image_id"] = self.source["image_id"]
        if self.source or self.recipe_has_source:
            fields["strength"] = float(self.strength.value or 0)
        if self.recipe_from:
            fields["recipe_from"] = self.recipe_from
            # A blank seed is a new one, not the recipe's.
            fields["vary"] = "seed" not in fields
        return GenerateIn(**fields)

    async def generate(self) -> None:
        self.problem.text = ""
        try:
            request = self.request()
        except ValueError as exc:
            self.problem.text = str(exc)
            return
        job_id = await act(call(_start, request), error_label=self.problem)
        if job_id is not None:
            self.grid.follow(job_id, self.jobs)


def _whole(value: Any) -> int | None:
    return int(value) if value is not None else None


class ResultGrid:
    """The generated images, newest first, a page at a time; each with its actions."""

    def __init__(self, member: bool):
        self.member = member
        self.page = 1
        self.form: PromptForm | None = None

    def show(self) -> None:
        ui.label("Results").classes("text-lg font-semibold")
        self.grid()

    def follow(self, job_id: str, where: ui.column) -> None:
        """Watch a generation job; its images join the grid once it ends."""

        def finished(_job) -> None:
            self.page = 1
            self.grid.refresh()

        with where, ui.card().classes("w-full").props("flat bordered"):
            ui.label("Generation").classes("font-medium")
            JobWatch(job_id, finished)

    @ui.refreshable_method
    def grid(self) -> None:
        images, total = read(call(_images_page, self.page))
        if not images:
            ui.label(
                "No images yet."
                + (" Write a prompt above and press Generate." if self.member else "")
            ).classes("text-grey-7")
            return
        with (
            ui.element("div")
            .classes("grid grid-cols-1 sm:grid-cols-2 lg:grid-cols-3 gap-3 w-full")
            .props('data-testid="image-grid"')
        ):
            for image in images:
                self._card(image)
        pages = -(-total // IMAGES_PER_PAGE)
        if pages > 1:
            ui.pagination(1, pages, value=self.page, on_change=self._turn).props(
                'data-testid="image-pages"'
            )

    def _turn(self, event) -> None:
        self.page = int(event.value)
        self.grid.refresh()

    def _card(self, image: dict[str, Any]) -> None:
        recipe = image["recipe"]
        grounding = recipe.get("grounding")
        with (
            ui.card()
            .classes("w-full")
            .props(f'flat bordered data-testid="image-card" data-image-id="{image["id"]}"')
        ):
            ui.image(f"/download/images/{image['id']}").classes("w-full").props(
                'fit=contain data-testid="image-picture"'
            )
            ui.label(recipe.get("prompt", "")).classes("font-medium wrap-anywhere").props(
                'data-testid="image-prompt"'
            )
            details = (
                f"{recipe.get('model_name')} · {image['width']}x{image['height']} · "
                f"seed {recipe.get('seed')} · {recipe.get('steps')} steps · "
                f"guidance {recipe.get('guidance')}"
            )
            ui.label(details).classes("text-xs text-grey-8 wrap-anywhere").props(
                'data-testid="image-details"'
            )
            if grounding:
                ui.label(
                    f"Grounded in {', '.join(grounding['knowledge_bases'])}: "
                    f"{grounding['final_prompt']}"
                ).classes("text-xs text-grey-7 wrap-anywhere")
            ui.label(image["created"]).classes("text-xs text-grey-6")
            with ui.row().classes("gap-1"):
                with ui.link(target=f"/download/images/{image['id']}?attachment=true").classes(
                    "no-underline"
                ):
                    ui.button(icon="download").props(
                        'flat dense aria-label=Download data-testid="image-download"'
                    ).tooltip("Download the PNG (recipe inside)")
                if not self.member:
                    return
                self._action("Reuse recipe", "edit_note", "image-reuse", lambda: self._reuse(image))
                self._action("Again", "replay", "image-again", lambda: self._again(image, False))
                self._action("Vary", "shuffle", "image-vary", lambda: self._again(image, True))
                self._action(
                    "Use as source",
                    "image",
                    "image-source",
                    lambda: self.form.use_as_source(image["id"]) if self.form else None,
                )
                self._action(
                    "Delete", "delete", "image-delete", lambda: self._delete(image), "negative"
                )

    @staticmethod
    def _action(label: str, icon: str, testid: str, handler: Any, color: str = "primary") -> None:
        ui.button(label, icon=icon, on_click=handler, color=color).props(
            f'flat dense no-caps data-testid="{testid}"'
        )

    def _reuse(self, image: dict[str, Any]) -> None:
        if self.form is not None:
            self.form.fill(image["recipe"], image["id"])

    async def _again(self, image: dict[str, Any], vary: bool) -> None:
        request = GenerateIn(recipe_from=image["id"], vary=vary)
        job_id = await act(call(_start, request))
        if job_id is not None and self.form is not None:
            self.follow(job_id, self.form.jobs)

    def _delete(self, image: dict[str, Any]) -> None:
        confirm_delete(
            "Delete this image?",
            "Its PNG and recipe are deleted; images made from its recipe stay.",
            call(service.delete_image, image["id"]),
            done="Image deleted",
            then=self.grid.refresh,
        )


# -- one image model -------------------------------------------------------------------------


def _model_view(session, principal, model_id: str) -> dict[str, Any]:
    return service.describe_model(service.get_image_model(session, principal, model_id))


def _adapter_rows(session, principal, model_id: str, _limit: int, _offset: int):
    adapters = service.list_adapters(session, principal, model_id)
    rows = [
        {
            "id": adapter.id,
            "name": adapter.name,
            "origin": _origin(adapter.card),
            "size": size_text(adapter.size_bytes),
            "digest": adapter.digest[:12],
            "created": when(adapter.created_at),
        }
        for adapter in adapters
    ]
    return rows, len(rows)


def _origin(card: dict[str, Any] | None) -> str:
    """Uploaded, or what its training was."""
    if not card:
        return "uploaded"
    return (
        f"trained: LoRA r{card['rank']}, {card['steps']} steps on {card['images']} images, "
        f"loss {card['final_loss']:.4f}"
    )


def _train_form(model_id: str, refresh: Any) -> None:
    """Upload a zip of captioned images, name the adapter, choose the steps; the job is
    followed live and the adapter joins the table when it ends."""
    archive: dict[str, Any] = {}
    with ui.card().classes("w-full").props('flat bordered data-testid="train-form"'):
        ui.label("Train an adapter").classes("font-medium")
        ui.label(
            "A zip of png, jpg or webp images with captions: <name>.txt beside each image, or "
            "a metadata.jsonl of file_name and text lines. Resolution, rank and learning rate "
            "are the defaults here; the API and `tuneyard image train` set them all."
        ).classes("text-xs text-grey-7")

        async def received(event) -> None:
            archive["data"] = await event.file.read()
            archive["name"] = event.file.name
            chosen.text = f"Images: {event.file.name}"

        upload = ui.upload(label="Images and captions (.zip)", auto_upload=True, on_upload=received)
        upload.props('accept=".zip" flat bordered data-testid="train-upload"')
        chosen = ui.label("No archive yet.").props('data-testid="train-archive"')
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = ui.input("Adapter name").props('outlined dense data-testid="train-name"')
            steps = ui.number(
                "Steps",
                value=TrainIn.model_fields["steps"].default,
                min=1,
                max=MAX_TRAIN_STEPS,
                precision=0,
            ).props('outlined dense data-testid="train-steps"')
        problem = error_label("train-error")
        followed = ui.column().classes("w-full gap-2").props('data-testid="train-jobs"')

        async def start() -> None:
            problem.text = ""
            if "data" not in archive:
                problem.text = "Upload a zip of images and captions first."
                return
            try:
                request = TrainIn(name=name.value or "", steps=int(steps.value or 1))
            except ValueError as exc:
                problem.text = str(exc)
                return
            data, filename = archive["data"], archive["name"]
            job_id = await act(
                lambda session, principal: (
                    service.start_training(
                        session, principal, model_id, request, io.BytesIO(data), filename
                    )[0].id
                ),
                error_label=problem,
            )
            if job_id is not None:
                with followed, ui.card().classes("w-full").props("flat bordered"):
                    ui.label(f"Training {request.name}").classes("font-medium")
                    JobWatch(job_id, lambda _job: refresh())

        ui.button("Train", icon="model_training", on_click=start).props(
            'no-caps data-testid="train-start"'
        )


@console_page("/deepimage/models/{model_id}", "Image model", SECTION)
def image_model_page(model_id: str):
    model = read(call(_model_view, model_id))
    principal = current_principal()
    member = principal.allows("member")
    heading(model["name"], model["path"])
    card = model["card"]
    plan = model["preflight"]
    with ui.card().classes("w-full").props('flat bordered data-testid="image-model-facts"'):
        facts(
            [
                ("Pipeline", model["pipeline_class"]),
                ("Source", model["source"]),
                ("Native size", f"{card.get('native_size')} px"),
                ("Sizes", f"multiples of {card.get('size_multiple')} px"),
                ("Parameters", card.get("parameters") or "unknown"),
                ("On disk", card.get("size") or size_text(card.get("size_bytes"))),
                ("Runs on", f"{plan.get('device')}, {plan.get('dtype')}"),
                ("Memory estimate", plan.get("estimated") or "unknown"),
            ]
        )
    for warning in plan.get("warnings") or []:
        with (
            ui.row()
            .classes("items-center gap-2 text-warning")
            .props('data-testid="preflight-warning"')
        ):
            ui.icon("warning")
            ui.label(warning)
    model_card(card)

    ui.label("Adapters (image LoRAs)").classes("text-lg font-semibold")
    adapters = PagedTable(
        ADAPTER_COLUMNS,
        lambda session, principal, limit, offset: _adapter_rows(
            session, principal, model["id"], limit, offset
        ),
        empty="No adapters yet.",
        status_column=None,
    )
    adapters.table.props('data-testid="adapter-table"')
    if not member:
        cannot(f"Adding adapters and deleting: {principal.refusal('member')}")
        return

    adapters.table.columns = [*adapters.table.columns, column("actions", "", align="right")]
    adapters.table.add_slot(
        "body-cell-actions", actions_slot([("Delete", "drop-adapter", "negative", "")])
    )
    adapters.table.on(
        "drop-adapter",
        lambda event: confirm_delete(
            f"Delete adapter {event.args['name']}?",
            "Its file is deleted; images made with it keep their recipe.",
            call(service.delete_adapter, model["id"], event.args["id"]),
            done=f"Deleted adapter {event.args['name']}",
            then=adapters.load,
        ),
    )

    async def received(event) -> None:
        data = await event.file.read()
        name = event.file.name.rsplit(".", 1)[0]
        added = await act(
            lambda session, principal: (
                service.add_adapter(session, principal, model["id"], name, io.BytesIO(data)).id
            ),
            done=f"Added adapter {name}",
        )
        if added is not None:
            adapters.load()

    upload = ui.upload(label="Add a LoRA (.safetensors)", auto_upload=True, on_upload=received)
    upload.props('accept=".safetensors" flat bordered data-testid="adapter-upload"')
    if service.training_refusal(model["name"], model["source"], card) is None:
        _train_form(model["id"], adapters.load)

    delete_button(
        lambda: confirm_delete(
            f"Unregister {model['name']}?",
            "Its files stay where they are, and so do the images made with it; its adapters "
            "are deleted.",
            call(service.delete_image_model, model["id"]),
            done=f"Unregistered {model['name']}",
            then=lambda: ui.navigate.to(SECTION),
            action="Unregister",
        ),
        testid="image-model-delete",
    )
