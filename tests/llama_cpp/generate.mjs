// Greedy generation with a real llama.cpp (node-llama-cpp's prebuilt CPU binaries), for the
// tests that check a GGUF written by `transplant export-gguf` against transformers.
//
//   node generate.mjs '{"model": "m.gguf", "prompt": [1, 2, 3], "text": "Hello", "n": 8}'
//
// prints one JSON line: the token ids llama.cpp gives `text` (no BOS/EOS added), whether it
// would prepend BOS, and the `n` tokens it generates greedily after `prompt` (token ids).
// Nothing is downloaded or built: a missing binary is an error, not a compile.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const request = JSON.parse(process.argv[2]);
const llama = await getLlama({
    gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
    progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: request.threads ?? 1,
});
const model = await llama.loadModel({modelPath: request.model, gpuLayers: 0});
const result = {bos: model.tokens.bos, eos: model.tokens.eos, add_bos: model.tokens.shouldPrependBosToken};
if (request.text !== undefined)
    result.text_tokens = Array.from(model.tokenize(request.text, false));
if (request.prompt !== undefined) {
    const context = await model.createContext({contextSize: request.context ?? 512, batchSize: 512});
    const sequence = context.getSequence();
    const generated = [];
    for await (const token of sequence.evaluate(request.prompt, {temperature: 0})) {
        generated.push(token);
        if (generated.length >= request.n) break;
    }
    result.generated = generated;
    await context.dispose();
}
await model.dispose();
await llama.dispose();
console.log(JSON.stringify(result));
