"""google-genai's Live API client through the proxy: `client.aio.live.connect` with the proxy as
base_url, a text turn answered with usage, and a clear error when every project is full.
Run by tests/it/live.rs with PROXY_URL and CLIENT_KEY set."""

import asyncio
import os
import sys

from google import genai
from google.genai import errors, types

PROXY_URL = os.environ["PROXY_URL"]
CLIENT_KEY = os.environ["CLIENT_KEY"]
MODEL = "gemini-2.5-flash-native-audio"


async def main():
    client = genai.Client(
        api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=PROXY_URL)
    )
    config = types.LiveConnectConfig(response_modalities=["TEXT"])
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="hello sdk")]),
            turn_complete=True,
        )
        text, usage = "", None
        async for message in session.receive():
            if message.server_content and message.server_content.model_turn:
                for part in message.server_content.model_turn.parts:
                    text += part.text or ""
            if message.usage_metadata:
                usage = message.usage_metadata
            if message.server_content and message.server_content.turn_complete:
                break
        assert text == "echo: hello sdk", text
        assert usage is not None and usage.prompt_token_count == 11, usage

        # The one slot is held by this session: a second one is refused with a clear reason.
        try:
            async with client.aio.live.connect(model=MODEL, config=config):
                pass
        except errors.APIError as e:
            assert e.code == 1013, (e.code, e.message)
            assert "limits.live_sessions" in str(e), str(e)
        else:
            raise AssertionError("a second session was not refused")
    print("google-genai live checks passed")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
