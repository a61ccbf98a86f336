// An informer of the official JavaScript client over services, while a
// service is created, replaced and deleted: prints what it saw as JSON.
import * as k8s from '@kubernetes/client-node';

const kc = new k8s.KubeConfig();
kc.loadFromDefault();
const api = kc.makeApiClient(k8s.CoreV1Api);
const namespace = 'default';
const name = 'js-informed';
const seen = [];
const informer = k8s.makeInformer(kc, `/api/v1/namespaces/${namespace}/services`, () => api.listNamespacedService({ namespace }));
for (const verb of ['add', 'update', 'delete']) {
  informer.on(verb, (obj) => {
    if (obj.metadata.name === name) seen.push(`${verb} ${obj.metadata.name} ${obj.spec?.ports?.[0]?.port ?? ''}`.trim());
  });
}
informer.on('error', (err) => console.error('informer error:', err?.message ?? err));
await informer.start();
const until = async (what, done) => {
  const deadline = Date.now() + 20000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; saw ${JSON.stringify(seen)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};
const body = { metadata: { name }, spec: { ports: [{ port: 80 }] } };
await api.createNamespacedService({ namespace, body });
await until('add', () => seen.some((s) => s.startsWith('add')));
const current = await api.readNamespacedService({ name, namespace });
current.spec.ports[0].port = 81;
await api.replaceNamespacedService({ name, namespace, body: current });
await until('update', () => seen.some((s) => s.startsWith('update') && s.endsWith('81')));
await api.deleteNamespacedService({ name, namespace });
await until('delete', () => seen.some((s) => s.startsWith('delete')));
await informer.stop();
console.log(JSON.stringify(seen));
