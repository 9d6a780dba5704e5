// The Vercel AI SDK (`ai` with `@ai-sdk/google`) pointed at the proxy with `baseURL`:
// generateText and streamText, each answer's text printed as a JSON line for
// tests/it/sdk_vercel.rs to check. PROXY_URL and CLIENT_KEY come from the test.
import { createGoogleGenerativeAI } from '@ai-sdk/google';
import { generateText, streamText } from 'ai';

const google = createGoogleGenerativeAI({
  baseURL: `${process.env.PROXY_URL}/v1beta`,
  apiKey: process.env.CLIENT_KEY,
});
const model = google('gemini-2.5-flash');

const generated = await generateText({ model, prompt: 'Say hello', maxRetries: 0 });
console.log(JSON.stringify({ call: 'generateText', text: generated.text, inputTokens: generated.usage.inputTokens }));

const stream = streamText({ model, prompt: 'Count to three', maxRetries: 0 });
const chunks = [];
for await (const chunk of stream.textStream) chunks.push(chunk);
console.log(JSON.stringify({ call: 'streamText', text: chunks.join(''), chunks: chunks.length }));
