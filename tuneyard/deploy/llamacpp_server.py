"""The llama.cpp server Tuneyard starts: llama-cpp-python's own server, its weights kept in plain
CPU buffers (see `plain_buffers`). Run as `python -m tuneyard.deploy.llamacpp_server --config_file
config.json`, with the arguments of `python -m llama_cpp.server`."""

from __future__ import annotations


def plain_buffers() -> None:
    """Load every model of this process with ggml's plain CPU buffers, not its extra buffer types
    (AMX tiles, repacked weights): on CPUs with AMX, the AMX matrix product crashes the process
    in its first decode (seen with llama-cpp-python 0.3.36 and a Q4_1 model). Call before the
    first model loads; the cost is ggml's weight repacking, a few percent of speed."""
    import llama_cpp.llama_cpp as native

    default = native.llama_model_default_params
    if getattr(default, "plain_buffers", False):
        return

    def params():
        chosen = default()
        chosen.use_extra_bufts = False
        return chosen

    params.plain_buffers = True  # type: ignore[attr-defined]
    native.llama_model_default_params = params


def main() -> None:
    plain_buffers()
    from llama_cpp.server.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
