import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';
import type { ProxyOptions } from 'vite';

// The Rust server; `npm run dev` proxies the API to it. Override with SSE_API_TARGET.
const apiTarget = process.env.SSE_API_TARGET ?? 'http://127.0.0.1:3000';

const isEventStream = (contentType: string | string[] | undefined): boolean =>
  String(contentType ?? '').includes('text/event-stream');

/**
 * `/v4/sse` is a never-ending `text/event-stream` response. The proxy pipes it chunk by chunk,
 * but we make sure nothing on the way holds it back:
 * - ask upstream for an uncompressed body (a compressing upstream or middleware would buffer);
 * - disable Nagle on the browser socket and mark the response `no-transform` / unbuffered;
 * - when the browser goes away (tab closed, EventSource.close()), close the upstream request
 *   too, so the server's connection count does not grow with every reload.
 */
const v4Proxy: ProxyOptions = {
  target: apiTarget,
  changeOrigin: false,
  configure(proxy) {
    proxy.on('proxyReq', (proxyReq, req, res) => {
      if (req.url?.startsWith('/v4/sse')) {
        proxyReq.setHeader('accept-encoding', 'identity');
        res.on('close', () => {
          if (!proxyReq.destroyed) proxyReq.destroy();
        });
      }
    });
    proxy.on('proxyRes', (proxyRes, req) => {
      if (isEventStream(proxyRes.headers['content-type'])) {
        proxyRes.headers['cache-control'] = 'no-cache, no-transform';
        proxyRes.headers['x-accel-buffering'] = 'no';
        req.socket.setNoDelay(true);
      }
    });
  },
};

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      '/v4': v4Proxy,
      '/auth': { target: apiTarget, changeOrigin: false },
    },
  },
  build: {
    outDir: 'dist',
    sourcemap: true,
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
    setupFiles: ['src/test/setup.ts'],
    restoreMocks: true,
    unstubGlobals: true,
  },
});
