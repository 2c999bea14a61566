// One voice turn through the relay with the Node `openai` SDK, as a Node app
// would write it: AzureOpenAI + OpenAIRealtimeWS.azure(), which always opens
// wss://. The relay's CA is trusted through NODE_EXTRA_CA_CERTS only.
//
// Environment: RELAY_ENDPOINT (https://host:port), RELAY_KEY, RELAY_DEPLOYMENT,
// RELAY_API_VERSION. A "-preview" api-version uses the SDK's beta (preview
// protocol) client instead, as apps written before GA do. Prints one JSON
// line: what the session did. Exit status 0 once response.done arrived, 1 on
// any error or after 20 s.
import { AzureOpenAI } from "openai";

const preview = process.env.RELAY_API_VERSION.endsWith("-preview");
const { OpenAIRealtimeWS } = await import(preview ? "openai/beta/realtime/ws" : "openai/realtime/ws");

const client = new AzureOpenAI({
  endpoint: process.env.RELAY_ENDPOINT,
  apiKey: process.env.RELAY_KEY,
  apiVersion: process.env.RELAY_API_VERSION,
  deployment: process.env.RELAY_DEPLOYMENT,
});

// One second of a 220 Hz tone, PCM16 mono at 24 kHz, base64: the simulator
// hears speech in it.
function tone() {
  const samples = new Int16Array(24000);
  for (let i = 0; i < samples.length; i++) {
    samples[i] = Math.round(8000 * Math.sin((2 * Math.PI * 220 * i) / 24000));
  }
  return Buffer.from(samples.buffer).toString("base64");
}

const seen = [];
let updated = null;
const timer = setTimeout(() => fail(new Error(`no response.done in 20 s: ${seen.slice(-10)}`)), 20000);

function fail(error) {
  console.error(String(error && error.stack ? error.stack : error));
  process.exit(1);
}

const rt = await OpenAIRealtimeWS.azure(client);
rt.on("error", fail);
rt.socket.on("close", (code) => {
  if (!seen.includes("response.done")) fail(new Error(`closed with ${code} after ${seen.slice(-10)}`));
});
rt.on("event", (event) => {
  seen.push(event.type);
  if (event.type === "session.created") {
    // What apps send: their voice and instructions; manual turns here.
    const instructions = "You are a helpful assistant.";
    rt.send({
      type: "session.update",
      session: preview
        ? { instructions, turn_detection: null, voice: "alloy" }
        : {
            type: "realtime",
            instructions,
            audio: { input: { turn_detection: null }, output: { voice: "alloy" } },
          },
    });
  } else if (event.type === "session.updated") {
    updated = event.session;
    rt.send({ type: "input_audio_buffer.append", audio: tone() });
    rt.send({ type: "input_audio_buffer.commit" });
    rt.send({ type: "response.create" });
  } else if (event.type === "response.done") {
    clearTimeout(timer);
    console.log(JSON.stringify({ url: String(rt.url), events: seen, session: updated }));
    rt.close();
  }
});
