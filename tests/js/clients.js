// Clients the project did not write, driven by tests/server/test_third_party_clients.py and tests/deploy:
//
//   node clients.js health TARGET [SERVICE]        -> {"status": "SERVING"} or {"code": N, "details": "..."}
//   node clients.js translate TARGET REQUEST_JSON  -> the TranslateResponse as JSON, or {"code", "details"}
//   node clients.js servicemonitor OBJECT_JSON     -> {"valid": true} or {"valid": false, "errors": "..."}
//
// grpc-js with grpc-health-check's service definition and proto-loader on the project's own .proto; the
// ServiceMonitor check is @kubernetes-models/prometheus-operator's validation against the operator's schema.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");

const DEADLINE_MS = 60000;

function reply(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function settle(error, response) {
  if (error) {
    reply({ code: error.code, details: error.details });
  } else {
    reply(response);
  }
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function health(target, service) {
  const { service: definition } = require("grpc-health-check");
  const Health = grpc.makeGenericClientConstructor(definition, "Health");
  const client = new Health(target, grpc.credentials.createInsecure());
  client.check({ service: service || "" }, { deadline: deadline() }, (error, response) => {
    settle(error, response && { status: response.status });
    client.close();
  });
}

function translate(target, request) {
  const loader = require("@grpc/proto-loader");
  const protoRoot = path.resolve(__dirname, "..", "..", "proto");
  const definition = loader.loadSync("mtserve/v1/translation.proto", {
    includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: false,
  });
  const { TranslationService } = grpc.loadPackageDefinition(definition).mtserve.v1;
  const client = new TranslationService(target, grpc.credentials.createInsecure());
  client.Translate(JSON.parse(request), { deadline: deadline() }, (error, response) => {
    settle(error, response);
    client.close();
  });
}

async function serviceMonitor(object) {
  // An ES module only: imported, not required.
  const { ServiceMonitor } = await import("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
  try {
    new ServiceMonitor(JSON.parse(object)).validate();
    reply({ valid: true });
  } catch (error) {
    reply({ valid: false, errors: String(error.message || error) });
  }
}

const [command, ...args] = process.argv.slice(2);
const commands = { health, translate, servicemonitor: serviceMonitor };
if (!(command in commands)) {
  process.stderr.write(`usage: node clients.js ${Object.keys(commands).join("|")} ...\n`);
  process.exit(2);
}
commands[command](...args);
