"""Export a Hugging Face checkpoint to OpenVINO IR: `python -m engines.openvino.convert SRC DST FORMAT`.

Run as its own process by `engines.openvino.ensure_ir` (optimum-intel patches transformers while
it traces, and the traced model's memory is returned when the process ends). Writes the model,
its tokenizer and detokenizer IR, and the Hugging Face config and tokenizer files into DST.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    src, dst, weight_format = sys.argv[1:4]
    from optimum.exporters.openvino import main_export
    from optimum.intel.openvino.configuration import OVConfig

    started = time.monotonic()
    print(f"exporting {src} (weights {weight_format}) ...", flush=True)
    # An explicit OVConfig keeps the weights as they are: without one, optimum-intel quantizes
    # models over a billion parameters to int8.
    main_export(src, output=dst, task="text-generation-with-past", ov_config=OVConfig(dtype=weight_format), convert_tokenizer=True)
    print(f"exported in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
