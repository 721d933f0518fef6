// Router.PlaceStream: a few long bidi streams, each sending many requests as fast as the window allows.
// Per-message round trip (write -> matching PlaceResult) is measured here as a Trend.
// Driven by bench/place_load.py; env: ADDR, STREAMS (VUs, one stream each), PER_STREAM (requests per
// stream), WINDOW (requests in flight per stream), COMPLETE_SHARE, SUMMARY.
import grpc from 'k6/net/grpc';
import { Counter, Trend } from 'k6/metrics';
import exec from 'k6/execution';

const ADDR = __ENV.ADDR;
const PER_STREAM = parseInt(__ENV.PER_STREAM || '50000', 10);
const WINDOW = parseInt(__ENV.WINDOW || '64', 10);
const COMPLETE_SHARE = parseFloat(__ENV.COMPLETE_SHARE || '0');

export const options = {
  scenarios: {
    streams: {
      executor: 'per-vu-iterations',
      vus: parseInt(__ENV.STREAMS || '4', 10),
      iterations: 1,
      maxDuration: __ENV.MAX_DURATION || '60s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max', 'count'],
};

const rtt = new Trend('place_stream_rtt', true);
// Every metric sample costs k6 CPU on the cores the server uses too, so each result adds two: its round
// trip and its status code (results = the sum of the codes, placed = code 0).
const streamErrors = new Counter('stream_transport_errors');
const byCode = [];
for (let c = 0; c <= 16; c++) byCode.push(new Counter(`stream_code_${c}`));
const streamSeconds = new Trend('stream_seconds');

const MODELS = ['llama-3.1-8b', 'llama-3.1-8b', 'llama-3.1-8b', 'llama-3.1-70b'];
const PRIORITIES = ['PRIORITY_STANDARD', 'PRIORITY_STANDARD', 'PRIORITY_CRITICAL', 'PRIORITY_SHEDDABLE'];
function pick(a) {
  return a[Math.floor(Math.random() * a.length)];
}

const client = new grpc.Client();

export default function () {
  client.connect(ADDR, { plaintext: true, reflect: true });
  const vu = exec.vu.idInTest;
  const stream = new grpc.Stream(client, 'turnout.v1.Router/PlaceStream');
  const sentAt = new Map();
  let sent = 0;
  let received = 0;
  const started = Date.now();

  function send() {
    const maxOut = pick([256, 512, 1024]);
    const id = `s-${vu}-${sent}-${started}`;
    sentAt.set(id, Date.now());
    stream.write({
      request_id: id,
      model: pick(MODELS),
      tenant: `tenant-${vu % 8}`,
      priority: pick(PRIORITIES),
      input_tokens: 200 + Math.floor(Math.random() * 3800),
      max_output_tokens: maxOut,
      expected_output_tokens: Math.floor(maxOut / 2),
    });
    sent++;
    if (sent === PER_STREAM) stream.end();
  }

  stream.on('data', (msg) => {
    const t0 = sentAt.get(msg.requestId);
    if (t0 !== undefined) {
      rtt.add(Date.now() - t0);
      sentAt.delete(msg.requestId);
    }
    received++;
    if (msg.placement) {
      byCode[0].add(1);
    } else {
      byCode[(msg.error && msg.error.code) || 2].add(1);
    }
    if (sent < PER_STREAM) send();
  });
  stream.on('error', (e) => {
    streamErrors.add(1);
    console.error(`stream ${vu}: ${e.code} ${e.message}`);
  });
  stream.on('end', () => {
    streamSeconds.add((Date.now() - started) / 1000);
    client.close();
  });
  for (let i = 0; i < WINDOW && sent < PER_STREAM; i++) send();
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
