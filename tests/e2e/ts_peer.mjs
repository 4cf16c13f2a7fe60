// The TypeScript MCP SDK v2 (2026-07-28), as server and as client, for the suites to put the
// proxy between:
//
//   node ts_peer.mjs server PORT RECORD     a stateless server; each tool run is a JSON line in RECORD
//   node ts_peer.mjs client URL CALLS [legacy]  lists tools, makes each call of the JSON list
//                                           CALLS ([[tool, args], ...]) and prints what it saw as
//                                           JSON; 2026-07-28 where the server speaks it, unless legacy
//
// The server's `deploy` asks for a confirmation first (a multi-round-trip call: it answers
// `input_required`, and the client repeats the call with the answer).
import { appendFileSync } from 'node:fs';
import { createServer } from 'node:http';

const [mode, ...args] = process.argv.slice(2);

if (mode === 'server') {
    const { toNodeHandler } = await import('@modelcontextprotocol/node');
    const { McpServer, createMcpHandler, inputRequired, acceptedContent } = await import('@modelcontextprotocol/server');
    const z = await import('zod');
    const [port, record] = args;
    const ran = (tool, a) => appendFileSync(record, JSON.stringify({ tool, args: a }) + '\n');
    const text = (t) => ({ content: [{ type: 'text', text: t }] });
    const build = () => {
        const server = new McpServer({ name: 'ts-peer', version: '1.0.0' });
        server.registerTool('read_file', { description: 'Reads a file', inputSchema: z.object({ path: z.string() }) },
            async ({ path }) => (ran('read_file', { path }), text(`contents of ${path}`)));
        server.registerTool('delete_repository', { description: 'Deletes a repository', inputSchema: z.object({ name: z.string() }) },
            async ({ name }) => (ran('delete_repository', { name }), text(`deleted ${name}`)));
        server.registerTool('create_issue', { description: 'Opens an issue', inputSchema: z.object({ title: z.string() }) },
            async ({ title }) => (ran('create_issue', { title }), text(`created ${title}`)));
        const confirmation = z.object({ ok: z.boolean() });
        server.registerTool('deploy', { description: 'Deploys, once confirmed', inputSchema: z.object({ env: z.string() }) },
            async ({ env }, ctx) => {
                const answer = acceptedContent(ctx.mcpReq.inputResponses, 'confirm', confirmation);
                if (answer === undefined) {
                    return inputRequired({
                        inputRequests: { confirm: inputRequired.elicit({ message: `Deploy to ${env}?`, requestedSchema: confirmation }) },
                    });
                }
                ran('deploy', { env, ok: answer.ok });
                return text(answer.ok ? `deployed to ${env}` : `not deployed to ${env}`);
            });
        return server;
    };
    // 2026-07-28 from a server per request, and stateless serving for 2025-era clients.
    createServer(toNodeHandler(createMcpHandler(build))).listen(Number(port), '127.0.0.1');
} else if (mode === 'client') {
    const { Client, StreamableHTTPClientTransport } = await import('@modelcontextprotocol/client');
    const [url, calls, era = 'auto'] = args;
    const client = new Client({ name: 'ts-peer', version: '1.0.0' }, {
        capabilities: { elicitation: { form: {} } },
        // `auto` probes with server/discover and speaks 2026-07-28 where the server does.
        versionNegotiation: { mode: era === 'legacy' ? 'legacy' : 'auto' },
    });
    client.setRequestHandler('elicitation/create', async () => ({ action: 'accept', content: { ok: true } }));
    await client.connect(new StreamableHTTPClientTransport(new URL(url)));
    const seen = { version: client.getNegotiatedProtocolVersion?.() ?? null, tools: [], calls: [] };
    seen.tools = (await client.listTools()).tools.map((t) => t.name).sort();
    for (const [tool, a] of JSON.parse(calls)) {
        try {
            const r = await client.callTool({ name: tool, arguments: a });
            seen.calls.push([r.isError ? 'error' : 'ok', r.content?.[0]?.text ?? '']);
        } catch (e) {
            seen.calls.push(['denied', e.message, e.data ?? null, e.code ?? null]);
        }
    }
    console.log(JSON.stringify(seen));
    await client.close();
} else {
    console.error('usage: ts_peer.mjs server PORT RECORD | client URL CALLS');
    process.exit(2);
}
