// The shipped declarations as an app meets them: test/types/client.ts uses the public API the way
// an app does, and marks with @ts-expect-error the uses the types must refuse, so the check also
// fails if a type decays to `any`; test/types/server-side.ts is compiled without DOM types. tsc
// reads dist/index.d.ts (run the build first).

import assert from "node:assert/strict"
import {execFileSync} from "node:child_process"
import path from "node:path"
import {test} from "node:test"
import {fileURLToPath} from "node:url"

const pkgDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

const typecheck = project => {
  const tsc = path.join(pkgDir, "node_modules/typescript/bin/tsc")
  try {
    execFileSync(process.execPath, [tsc, "--noEmit", "-p", project], {cwd: pkgDir, encoding: "utf8", stdio: "pipe"})
  } catch (error) {
    assert.fail(`tsc -p ${project} failed:\n${error.stdout}${error.stderr}`)
  }
}

test("test/types/client.ts type-checks against the built declarations", () => {
  typecheck("test/types")
})

test("the declarations compile for an app without DOM types", () => {
  typecheck("test/types/tsconfig.node.json")
})
