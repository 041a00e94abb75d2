-- Money in settlements is decimal: charge and amount to the øre, prices to 0.0001 DKK/GJ, as the
-- settlement computes them (Decimal, half-up per line). A type change rewrites the table without
-- firing the row triggers, so closed versions keep their figures (they were rounded already).
ALTER TABLE settlements
    ALTER COLUMN charge_dkk TYPE numeric(18, 2) USING round(charge_dkk::numeric, 2),
    ALTER COLUMN amount_dkk TYPE numeric(18, 2) USING round(amount_dkk::numeric, 2),
    ALTER COLUMN allowed_price TYPE numeric(14, 4) USING round(allowed_price::numeric, 4);
