"""google-genai's ephemeral tokens through the proxy: `client.aio.auth_tokens.create` with a
client key and the proxy as base_url, then `live.connect` with the token alone (the SDK sends it
to BidiGenerateContentConstrained), a text turn answered. Run by tests/live_tokens.rs with
PROXY_URL and CLIENT_KEY set."""

import asyncio
import os
import sys
import warnings

from google import genai
from google.genai import types

PROXY_URL = os.environ["PROXY_URL"]
CLIENT_KEY = os.environ["CLIENT_KEY"]
MODEL = "gemini-2.5-flash-native-audio"

# The SDK marks ephemeral tokens experimental.
warnings.simplefilter("ignore")


async def main():
    options = types.HttpOptions(base_url=PROXY_URL, api_version="v1alpha")
    client = genai.Client(api_key=CLIENT_KEY, http_options=options)
    config = types.LiveConnectConfig(response_modalities=["TEXT"])
    token = await client.aio.auth_tokens.create(
        config=types.CreateAuthTokenConfig(
            uses=1,
            live_connect_constraints=types.LiveConnectConstraints(model=MODEL, config=config),
        )
    )
    assert token.name and token.name.startswith("auth_tokens/"), token

    with_token = genai.Client(api_key=token.name, http_options=options)
    async with with_token.aio.live.connect(model=MODEL, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="hello token")]),
            turn_complete=True,
        )
        text = ""
        async for message in session.receive():
            if message.server_content and message.server_content.model_turn:
                for part in message.server_content.model_turn.parts:
                    text += part.text or ""
            if message.server_content and message.server_content.turn_complete:
                break
        assert text == "echo: hello token", text
    print("google-genai ephemeral token checks passed")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
