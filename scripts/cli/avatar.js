#!/usr/bin/env node
// The `avatar` package bin: runs the TypeScript CLI through tsx (a dev dependency set-up installs).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
require('tsx/cjs');
const { main } = require('./avatar.ts');
main(process.argv).then((code) => process.exit(code));
