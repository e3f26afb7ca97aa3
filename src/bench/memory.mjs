// Redis bytes per waiting job for BullMQ, measured as `conveyor bench` measures its own: INFO
// memory's used_memory before and after addBulk of JOBS jobs shaped as BullMQ's harness makes
// them ({ name: 'noop', data: { i } }, chunks of 1,000), with no worker. Copied beside bench.mjs
// by `conveyor bench --vs-bullmq` and run there; prints `MEMORY_SUMMARY {json}`.
import { Queue } from 'bullmq';
import IORedis from 'ioredis';

const port = Number(process.env.REDIS_PORT);
const jobs = Number(process.env.JOBS);
const connection = new IORedis({ port, maxRetriesPerRequest: null });
const usedMemory = async () => Number((await connection.info('memory')).match(/used_memory:(\d+)/)[1]);

const queue = new Queue('memory', { connection });
await queue.waitUntilReady();
// One job first, so the queue's own keys are not counted per job (as on Conveyor's side).
await queue.add('noop', { i: -1 });
const before = await usedMemory();
for (let i = 0; i < jobs; i += 1000) {
  const chunk = [];
  for (let k = i; k < Math.min(jobs, i + 1000); k++) chunk.push({ name: 'noop', data: { i: k } });
  await queue.addBulk(chunk);
}
const waiting = await queue.getWaitingCount();
if (waiting !== jobs + 1) throw new Error(`${waiting - 1} jobs waiting, ${jobs} added`);
const after = await usedMemory();
console.log('MEMORY_SUMMARY ' + JSON.stringify({
  jobs, used_memory_before: before, used_memory_after: after,
  bytes_per_job: Math.round((after - before) / jobs),
}));
await queue.close();
await connection.quit();
