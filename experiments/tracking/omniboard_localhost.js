// Preloaded into Omniboard (`node --require`): Omniboard calls `app.listen(port)` without a
// host, which binds every network interface. This makes every listen() that names a port but
// no host bind 127.0.0.1 only, so the dashboard (which has no login by default) is reachable
// from this machine alone; use `ssh -L 9000:127.0.0.1:9000 host` to browse it from elsewhere.
'use strict';
const net = require('net');

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  const isPort = typeof port === 'number' || (typeof port === 'string' && /^\d+$/.test(port));
  if (isPort && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  } else if (port && typeof port === 'object' && port.port !== undefined && port.host === undefined) {
    args[0] = Object.assign({}, port, { host: '127.0.0.1' });
  }
  return listen.apply(this, args);
};
