"""Drive the proxy with the official google-genai SDK, exactly as a user would.

Run by tests/it/sdk_python.rs with PROXY_URL and CLIENT_KEY set; exits non-zero on any failure.
"""
import os
import sys
import tempfile
import time

from google import genai
from google.genai import types

proxy = os.environ["PROXY_URL"]
client = genai.Client(
    api_key=os.environ["CLIENT_KEY"],
    http_options=types.HttpOptions(base_url=proxy),
)

# generate
r = client.models.generate_content(model="gemini-2.5-flash", contents="hello from the sdk")
assert r.text == "echo: hello from the sdk", r.text
assert r.usage_metadata.prompt_token_count == 5, r.usage_metadata

# stream: the first chunk must arrive while the upstream is still streaming
start = time.monotonic()
arrivals, texts = [], []
for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="stream it"):
    arrivals.append(time.monotonic() - start)
    texts.append(chunk.text)
assert texts == ["chunk 0 ", "chunk 1 ", "chunk 2 "], texts
# The fake pauses 500 ms between events: the first must not wait for the last.
assert arrivals[-1] - arrivals[0] > 0.8, arrivals

# count tokens
c = client.models.count_tokens(model="gemini-2.5-flash", contents="abcdefgh")
assert c.total_tokens == 2, c

# list models
names = [m.name for m in client.models.list()]
assert "models/gemini-2.5-flash" in names, names

# upload a small file (resumable upload through the proxy), then read it back
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("a small file for the proxy")
    path = f.name
uploaded = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="text/plain"))
assert uploaded.name.startswith("files/"), uploaded
assert uploaded.size_bytes == 26, uploaded
fetched = client.files.get(name=uploaded.name)
assert fetched.name == uploaded.name, fetched

# a wrong client key is refused with Google's error, which the SDK raises as such
bad = genai.Client(api_key="wrong-key", http_options=types.HttpOptions(base_url=proxy))
try:
    bad.models.generate_content(model="gemini-2.5-flash", contents="x")
    sys.exit("a wrong client key was accepted")
except genai.errors.ClientError as e:
    assert e.code == 403, e.code
    assert e.status == "PERMISSION_DENIED", e.status

print("google-genai SDK checks passed")
