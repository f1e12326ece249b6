// The package build: ESM, CommonJS and declarations, each one file, from src/index.ts. The
// WebAssembly module comes in through build/wasm (scripts/build.mjs makes it first): its
// wasm-bindgen bindings, and its bytes as base64 text.
import {defineConfig} from "tsup"

export default defineConfig({
  entry: {index: "src/index.ts"},
  format: ["esm", "cjs"],
  dts: true,
  target: "es2020",
  platform: "neutral",
  outDir: "dist",
  clean: true,
  treeshake: true,
  splitting: false,
  sourcemap: false,
  minify: false,
  outExtension: ({format}) => ({js: format === "cjs" ? ".cjs" : ".js"}),
})
