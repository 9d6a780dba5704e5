"""google-genai with vertexai=True pointed at the proxy (Vertex-form requests).

Run by tests/it/vertex.rs with PROXY_URL and CLIENT_KEY set; exits non-zero on any failure.
"""
import os

from google import genai
from google.genai import types

client = genai.Client(
    vertexai=True,
    api_key=os.environ["CLIENT_KEY"],
    http_options=types.HttpOptions(base_url=os.environ["PROXY_URL"]),
)

r = client.models.generate_content(model="gemini-2.5-flash", contents="hello vertex")
assert r.text == "from vertex", r.text
assert r.usage_metadata.prompt_token_count == 4, r.usage_metadata

texts = [c.text for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="s")]
assert texts == ["vertex 0 ", "vertex 1 "], texts

c = client.models.count_tokens(model="gemini-2.5-flash", contents="abc")
assert c.total_tokens == 7, c

print("ok")
