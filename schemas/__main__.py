"""`python -m schemas` rewrites the committed JSON Schema files from the structs."""

import json
from pathlib import Path

from schemas.events import json_schemas

if __name__ == "__main__":
    out = Path(__file__).parent / "json"
    out.mkdir(exist_ok=True)
    for name, doc in json_schemas().items():
        (out / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(out / name)
