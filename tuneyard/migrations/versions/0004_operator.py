"""the server's operator; registered live models keep no copy of their environment's key

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:50:26.674025
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('operator', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # The first admin of the first project is the one the first start made: the operator.
    op.execute(
        """
        UPDATE users SET operator = true
        WHERE id = (
            SELECT users.id FROM users JOIN projects ON users.project_id = projects.id
            WHERE users.role = 'admin'
            ORDER BY projects.created_at, users.created_at
            LIMIT 1
        )
        """
    )
    # Entries registered from a live model carried a copy of the environment's key; they now
    # take it from the environment while they point at the live model.
    op.execute(
        """
        UPDATE third_party_models SET api_key_encrypted = NULL
        WHERE live_model_id IS NOT NULL AND api_key_encrypted = (
            SELECT deploy_environments.api_key_encrypted
            FROM live_models
            JOIN deploy_environments ON live_models.environment_id = deploy_environments.id
            WHERE live_models.id = third_party_models.live_model_id
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('operator')
