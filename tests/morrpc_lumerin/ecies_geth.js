// Bridge to the npm package ecies-geth (an independent JavaScript port of geth's
// crypto/ecies) for the cross-implementation tests. Reads a JSON list of operations
// on stdin, writes a JSON list of hex results on stdout:
//   {"op": "encrypt", "pub": hex, "msg": hex, "ephem"?: hex, "iv"?: hex}
//   {"op": "decrypt", "key": hex, "data": hex}          (an error → {"error": text})
const ecies = require("ecies-geth");

const hex = (s) => Buffer.from(s, "hex");

async function run(op) {
  if (op.op === "encrypt") {
    const opts = {};
    if (op.ephem) opts.ephemPrivateKey = hex(op.ephem);
    if (op.iv) opts.iv = hex(op.iv);
    return (await ecies.encrypt(hex(op.pub), hex(op.msg), opts)).toString("hex");
  }
  if (op.op === "decrypt") {
    return (await ecies.decrypt(hex(op.key), hex(op.data))).toString("hex");
  }
  throw new Error("unknown op " + op.op);
}

let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", async () => {
  const out = [];
  for (const op of JSON.parse(input)) {
    try { out.push(await run(op)); } catch (e) { out.push({ error: String(e.message || e) }); }
  }
  process.stdout.write(JSON.stringify(out));
});
