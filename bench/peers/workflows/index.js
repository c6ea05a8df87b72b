// The purchase saga as a Cloudflare Workflow, written the way a Workers user
// would: one `step.do` per effect, `step.waitForEvent` for the buyer's
// delivery confirmation, compensations run in reverse on failure. Like the
// payments Worker's SAGA_EFFECTS=inline mode, the steps do no outside work:
// each returns what the provider would have answered.
//
// HTTP API driven by `cargo xtask bench saga`:
//   POST /sagas/:id            start (body: the order)
//   POST /sagas/:id/delivery   the buyer confirms delivery (an event)
//   GET  /sagas/:id            { status, output }; "complete" when done
import { WorkflowEntrypoint } from "cloudflare:workers";

export class PurchaseSaga extends WorkflowEntrypoint {
  async run(event, step) {
    const id = event.instanceId;
    const order = event.payload;
    const compensations = [];
    try {
      const reservation = await step.do("reserve listing", async () => ({ reservation: `${id}:reserve`, units: order.units ?? 1 }));
      compensations.push(() => step.do("release listing", async () => ({ released: reservation.reservation })));

      const hold = await step.do("hold funds", async () => ({ payment_intent: `pi_${id}`, amount: order.amount }));
      compensations.push(() => step.do("void hold", async () => ({ voided: hold.payment_intent })));

      await step.waitForEvent("delivery confirmed", { type: "delivery", timeout: "3 days" });

      const capture = await step.do("capture funds", async () => ({ captured: hold.payment_intent }));
      compensations.push(() => step.do("refund", async () => ({ refunded: capture.captured })));

      // The pivot: once the seller is paid, the saga only goes forward.
      const transfer = await step.do("release funds", async () => ({ transfer: `tr_${id}` }));
      compensations.length = 0;
      await step.do("mark sold", async () => ({ sold: reservation.reservation }));
      return { state: "completed", transfer: transfer.transfer };
    } catch (error) {
      for (const compensate of compensations.reverse()) {
        await compensate();
      }
      throw error;
    }
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [, root, id, action] = url.pathname.split("/");
    if (root !== "sagas" || !id) {
      return Response.json({ error: "not found" }, { status: 404 });
    }
    if (request.method === "POST" && !action) {
      const order = await request.json();
      const instance = await env.PURCHASES.create({ id, params: order });
      return Response.json({ id: instance.id }, { status: 201 });
    }
    if (request.method === "POST" && action === "delivery") {
      const instance = await env.PURCHASES.get(id);
      await instance.sendEvent({ type: "delivery", payload: { confirmed: true } });
      return Response.json({ sent: true });
    }
    if (request.method === "GET" && !action) {
      const instance = await env.PURCHASES.get(id);
      const { status, output, error } = await instance.status();
      return Response.json({ status, output, error });
    }
    return Response.json({ error: "not found" }, { status: 404 });
  },
};
