"""A burst of generate calls from the google-genai SDK with its default options (no retries),
through the proxy at PROXY_URL. Prints one JSON line: how many succeeded and the errors raised."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

from google import genai
from google.genai import types

client = genai.Client(
    api_key=os.environ["CLIENT_KEY"],
    http_options=types.HttpOptions(base_url=os.environ["PROXY_URL"]),
)
burst = int(os.environ.get("BURST", "8"))


def one(i: int):
    try:
        r = client.models.generate_content(model="gemini-2.5-flash", contents=f"burst-{i}")
        return ("ok", r.text)
    except Exception as e:  # the SDK raises genai.errors.ClientError on a 429
        return ("error", f"{type(e).__name__}: {str(e)[:200]}")


with ThreadPoolExecutor(max_workers=burst) as pool:
    results = list(pool.map(one, range(burst)))

print(json.dumps({
    "ok": sum(1 for kind, _ in results if kind == "ok"),
    "errors": [detail for kind, detail in results if kind == "error"],
}))
