"""SQLAlchemy 2 ORM (psycopg 3 driver) through a pgcloak proxy against real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from helpers import PgServer, ProxyProcess
from sqlalchemy import (
    ForeignKey,
    Numeric,
    String,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    uid: Mapped[uuid.UUID] = mapped_column(default=uuid.uuid4)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    books: Mapped[list[Book]] = relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.id"
    )


class Book(Base):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    price: Mapped[Decimal] = mapped_column(Numeric(8, 2))
    published: Mapped[dt.date | None]
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id", ondelete="CASCADE"))
    author: Mapped[Author] = relationship(back_populates="books")


def _url(target: PgServer | ProxyProcess, dbname: str) -> str:
    return f"postgresql+psycopg://postgres@{target.host}:{target.port}/{dbname}"


@pytest.fixture
def engines(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> Iterator[tuple[Engine, Engine]]:
    """(direct, proxied) engines on the same fresh database."""
    direct = create_engine(_url(pg, fresh_db), pool_size=2)
    proxied = create_engine(_url(proxy, fresh_db), pool_size=3)
    try:
        yield direct, proxied
    finally:
        proxied.dispose()
        direct.dispose()


def _orm_scenario(engine: Engine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    Base.metadata.create_all(engine)
    out["tables"] = sorted(inspect(engine).get_table_names())
    with Session(engine) as session:
        ada = Author(name="Ada Lovelace", meta={"born": 1815, "tags": ["math", "✓"]})
        ada.books = [
            Book(title="Notes on the Analytical Engine", price=Decimal("12.50")),
            Book(title="Sketch 🐘", price=Decimal("3.99"), published=dt.date(1843, 9, 1)),
        ]
        grace = Author(name="Grace Hopper", books=[Book(title="COBOL", price=Decimal("42"))])
        session.add_all([ada, grace])
        session.commit()
        out["ids"] = sorted(a.id for a in (ada, grace))
        out["uid_type"] = type(ada.uid).__name__

    with Session(engine) as session:
        # Relationship + join query.
        rows = session.execute(
            select(Author.name, Book.title, Book.price)
            .join(Author.books)
            .where(Book.price > Decimal("4"))
            .order_by(Book.price)
        ).all()
        out["join"] = [tuple(r) for r in rows]
        per_author = session.execute(
            select(Author.name, func.count(Book.id), func.sum(Book.price))
            .outerjoin(Author.books)
            .group_by(Author.name)
            .order_by(Author.name)
        ).all()
        out["aggregate"] = [tuple(r) for r in per_author]
        authors = session.scalars(
            select(Author).options(selectinload(Author.books)).order_by(Author.id)
        ).all()
        out["loaded"] = [(a.name, [b.title for b in a.books], a.meta) for a in authors]
        jsonq = session.scalars(select(Author.name).where(Author.meta["born"].as_integer() < 1900))
        out["json"] = list(jsonq)

    with Session(engine) as session:
        # Update, delete, cascade.
        ada = session.scalars(select(Author).where(Author.name == "Ada Lovelace")).one()
        ada.books[0].price = Decimal("13.75")
        ada.meta = {**ada.meta, "updated": True}
        grace = session.scalars(select(Author).where(Author.name == "Grace Hopper")).one()
        session.delete(grace)
        session.commit()
        out["after_update"] = session.execute(
            select(Book.title, Book.price).order_by(Book.id)
        ).all()
        out["books_left"] = session.scalar(select(func.count()).select_from(Book))

    with Session(engine) as session:
        # A constraint violation rolls the session back; it stays usable.
        session.add(Author(name="Ada Lovelace"))
        try:
            session.commit()
        except IntegrityError as exc:
            out["integrity"] = getattr(exc.orig, "sqlstate", None)
            session.rollback()
        stmt = insert(Author).values(name="Ada Lovelace").on_conflict_do_nothing()
        session.execute(stmt)
        session.commit()
        out["authors"] = session.scalars(select(Author.name).order_by(Author.name)).all()

    with engine.connect() as conn:
        # Core, many parameter sets in one executemany call.
        conn.execute(
            Book.__table__.insert(),
            [
                {"title": f"bulk {i}", "price": Decimal(i) / 4, "author_id": out["ids"][0]}
                for i in range(200)
            ],
        )
        conn.commit()
        out["bulk"] = conn.execute(text("SELECT count(*), sum(price) FROM books")).one()
    Base.metadata.drop_all(engine)
    out["tables_after_drop"] = inspect(engine).get_table_names()
    return out


def test_orm_crud_through_proxy(engines: tuple[Engine, Engine]) -> None:
    direct, proxied = engines
    expected = _orm_scenario(direct)
    got = _orm_scenario(proxied)
    assert got == expected
    assert got["tables"] == ["authors", "books"]
    assert got["uid_type"] == "UUID"
    assert got["join"] == [
        ("Ada Lovelace", "Notes on the Analytical Engine", Decimal("12.50")),
        ("Grace Hopper", "COBOL", Decimal("42.00")),
    ]
    assert got["aggregate"] == [
        ("Ada Lovelace", 2, Decimal("16.49")),
        ("Grace Hopper", 1, Decimal("42.00")),
    ]
    assert got["loaded"][0][2] == {"born": 1815, "tags": ["math", "✓"]}
    assert got["json"] == ["Ada Lovelace"]
    assert got["after_update"] == [
        ("Notes on the Analytical Engine", Decimal("13.75")),
        ("Sketch 🐘", Decimal("3.99")),
    ]
    assert got["books_left"] == 2
    assert got["integrity"] == "23505"
    assert got["authors"] == ["Ada Lovelace"]
    assert tuple(got["bulk"]) == (202, Decimal("17.74") + Decimal(199 * 200 // 2) / 4)
    assert got["tables_after_drop"] == []


def test_pooled_connections_reused(proxy: ProxyProcess, fresh_db: str, pg: PgServer) -> None:
    app = f"pgcloak-sa-{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        _url(proxy, fresh_db),
        pool_size=2,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={"application_name": app},
    )
    try:
        pids = set()
        for i in range(20):
            with engine.connect() as conn:
                pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                assert conn.execute(text("SELECT :x * 2"), {"x": i}).scalar_one() == 2 * i
        # The pool reuses one proxied connection (pre-ping included): one upstream backend.
        assert len(pids) == 1
        upstream = pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app])
        assert [r[0] for r in upstream] == list(pids)
    finally:
        engine.dispose()
