// @google/genai (the JS SDK) pointed at the proxy with httpOptions.baseUrl: `ai.live.connect`
// with the client key, a text turn in and its text out; then an ephemeral token made with
// `ai.authTokens.create` through the proxy and a second session opened with the token alone.
// Each session's result is printed as a JSON line for tests/live_tokens.rs to check. PROXY_URL
// and CLIENT_KEY come from the test.
import { GoogleGenAI, Modality } from '@google/genai';

const MODEL = 'gemini-2.5-flash-native-audio';

/** One session on `ai`: send `text` as a turn, gather the answer's text until turnComplete. */
async function turn(ai, text) {
  let answer = '';
  let usage = null;
  let finish;
  let fail;
  const done = new Promise((resolve, reject) => { finish = resolve; fail = reject; });
  const session = await ai.live.connect({
    model: MODEL,
    config: { responseModalities: [Modality.TEXT] },
    callbacks: {
      onmessage: (m) => {
        for (const part of m.serverContent?.modelTurn?.parts ?? []) answer += part.text ?? '';
        if (m.usageMetadata) usage = m.usageMetadata;
        if (m.serverContent?.turnComplete) finish();
      },
      onerror: (e) => fail(new Error(`socket error: ${e.message ?? e}`)),
      onclose: (e) => fail(new Error(`closed before the turn completed: ${e.code} ${e.reason}`)),
    },
  });
  session.sendClientContent({ turns: [{ role: 'user', parts: [{ text }] }], turnComplete: true });
  const timer = setTimeout(() => fail(new Error('no turnComplete within 30 s')), 30000);
  try {
    await done;
  } finally {
    clearTimeout(timer);
    session.close();
  }
  return { text: answer, promptTokens: usage?.promptTokenCount ?? null };
}

const baseUrl = process.env.PROXY_URL;
const ai = new GoogleGenAI({ apiKey: process.env.CLIENT_KEY, httpOptions: { baseUrl } });
console.log(JSON.stringify({ call: 'live', ...(await turn(ai, 'hello js')) }));

const maker = new GoogleGenAI({
  apiKey: process.env.CLIENT_KEY,
  httpOptions: { baseUrl, apiVersion: 'v1alpha' },
});
const token = await maker.authTokens.create({ config: { uses: 1 } });
const withToken = new GoogleGenAI({
  apiKey: token.name,
  httpOptions: { baseUrl, apiVersion: 'v1alpha' },
});
console.log(JSON.stringify({ call: 'token', ...(await turn(withToken, 'hello token')) }));
process.exit(0);
