// Test support (not a test file): where the server-backed suites find the `rollcall` binaries,
// and whether a missing one may be skipped.
//
// The binaries are built through cargo (a no-op when they are fresh), in the target directory
// `cargo metadata` reports, so an old build is never tested by mistake and CARGO_TARGET_DIR is
// honoured. Under `make test` (ROLLCALL_REQUIRE_ALL=1) and whenever CI is set, anything missing
// (binary, cargo, browser) fails the run instead of skipping suites that would count as nothing.
import {spawnSync} from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import {fileURLToPath} from "node:url"

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

/** Whether every server-backed and browser suite must run. */
export const required = Boolean(process.env.CI || process.env.ROLLCALL_REQUIRE_ALL)

/**
 * A skip reason for `node:test` (`false` when nothing is missing); throws instead when
 * everything is required.
 */
export function unavailable(reason) {
  if (reason && required) {
    throw new Error(`${reason} (required under make test and when CI is set)`)
  }
  return reason
}

function cargo(args) {
  return spawnSync("cargo", args, {cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"]})
}

/**
 * One build of the server's binaries and examples, the same command as the Makefile's: cargo
 * unifies features per command, so building `--bin rollcall` alone after `--examples` (which
 * adds dev-dependencies) would rebuild half the dependency tree, and the next build again.
 */
const SERVER_BUILD = ["-p", "rollcall-server", "--bins", "--examples"]
let built

let target
function targetDirectory() {
  if (target === undefined) {
    const meta = cargo(["metadata", "--format-version", "1", "--no-deps"])
    target = meta.status === 0 ? JSON.parse(meta.stdout).target_directory : null
  }
  return target
}

/**
 * Builds (when stale) and locates `rollcall` (`kind` "bin") or a server example (`kind`
 * "example"): `{path}` or `{missing: reason}`. ROLLCALL_BIN names a prebuilt binary instead;
 * its examples are looked for next to it.
 */
export function serverBinary(kind = "bin", name = "rollcall") {
  if (process.env.ROLLCALL_BIN) {
    const dir = path.dirname(process.env.ROLLCALL_BIN)
    const file = kind === "bin" ? process.env.ROLLCALL_BIN : path.join(dir, "examples", name)
    return fs.existsSync(file) ? {path: file} : {missing: `${file} not found (ROLLCALL_BIN)`}
  }
  const dir = targetDirectory()
  if (!dir) return {missing: "cargo not found: cannot build the rollcall server"}
  built ??= cargo(["build", "--quiet", ...SERVER_BUILD])
  const file = path.join(dir, "debug", kind === "bin" ? "" : "examples", name)
  if (built.status !== 0 || !fs.existsSync(file)) return {missing: `cargo could not build ${name}`}
  return {path: file}
}

// `node test/locate.mjs` (the first step of `npm test`) builds the server and the examples the
// suites use before any suite starts, so that no suite spends its time limit on compiling.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  for (const [kind, name] of [
    ["bin", "rollcall"],
    ["example", "room_channel"],
  ]) {
    const found = serverBinary(kind, name)
    if (found.missing) unavailable(found.missing)
  }
}
