// The purchase saga as a Restate workflow, written the way a Restate user
// would: one `ctx.run` per effect, the buyer's delivery confirmation as a
// durable promise, compensations run in reverse on a terminal failure. Like
// the payments Worker's SAGA_EFFECTS=inline mode, the steps do no outside
// work: each returns what the provider would have answered.
//
// Driven by `cargo xtask bench saga` through Restate's ingress:
//   POST /PurchaseSaga/:id/run/send           start (body: the order)
//   POST /PurchaseSaga/:id/confirmDelivery    resolves the durable promise
//   GET  /restate/workflow/PurchaseSaga/:id/attach   waits for the result

// The SDK expects Node 22's Promise.withResolvers; this machine has Node 20.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

// Imported after the polyfill (a static import would be evaluated first).
const restate = await import("@restatedev/restate-sdk");

const purchaseSaga = restate.workflow({
  name: "PurchaseSaga",
  handlers: {
    run: async (ctx, order) => {
      const id = ctx.key;
      const compensations = [];
      try {
        const reservation = await ctx.run("reserve listing", () => ({ reservation: `${id}:reserve`, units: order?.units ?? 1 }));
        compensations.push(() => ctx.run("release listing", () => ({ released: reservation.reservation })));

        const hold = await ctx.run("hold funds", () => ({ payment_intent: `pi_${id}`, amount: order?.amount }));
        compensations.push(() => ctx.run("void hold", () => ({ voided: hold.payment_intent })));

        await ctx.promise("delivery confirmed");

        const capture = await ctx.run("capture funds", () => ({ captured: hold.payment_intent }));
        compensations.push(() => ctx.run("refund", () => ({ refunded: capture.captured })));

        // The pivot: once the seller is paid, the saga only goes forward.
        const transfer = await ctx.run("release funds", () => ({ transfer: `tr_${id}` }));
        compensations.length = 0;
        await ctx.run("mark sold", () => ({ sold: reservation.reservation }));
        return { state: "completed", transfer: transfer.transfer };
      } catch (error) {
        if (error instanceof restate.TerminalError) {
          for (const compensate of compensations.reverse()) {
            await compensate();
          }
        }
        throw error;
      }
    },

    confirmDelivery: async (ctx) => {
      await ctx.promise("delivery confirmed").resolve({ confirmed: true });
      return { sent: true };
    },
  },
});

const port = Number(process.env.PORT ?? 9080);
restate.serve({ services: [purchaseSaga], port });
